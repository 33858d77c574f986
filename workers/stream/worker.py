"""Running one worker process (``learnstream worker``)."""
from __future__ import annotations

import logging
import os

from workers.stream.settings import Settings

__all__ = ("run_worker",)

logger = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    """Run the faust worker until SIGTERM/SIGINT. Starts the embedded broker if none is configured."""
    import faust

    from workers.stream.app import build_app

    broker = None
    if not settings.broker:
        from workers.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        settings = Settings.from_env(broker=broker.bootstrap, broker_kind="embedded",
                                     **{k: getattr(settings, k) for k in ("data_dir", "web_port", "web_host",
                                                                          "partitions", "worker_id")})
        print(f"embedded broker on {broker.bootstrap}", flush=True)
    from workers.stream.provision import ensure_topics_sync

    ensure_topics_sync(settings)
    app, _ = build_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    logger.info("worker pid %s, web http://%s:%s", os.getpid(), settings.web_host, settings.web_port)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if broker is not None:
            broker.stop()
    return 0
