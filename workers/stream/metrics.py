"""Domain metrics (``learnstream_*``, base units, low-cardinality labels) on their own registry.

faust's framework metrics live on a second registry; ``/metrics`` serves both.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ("REGISTRY", "EVENTS", "KERNEL_SECONDS", "BATCH_SECONDS", "ADAPTER_NORM", "DOWNSTREAM", "DLQ",
           "CONSUMER_LAG", "READY", "OFFSET_GAPS", "REROUTED", "MESSAGES", "SCORING_CALLS", "SCORING_CALL_SECONDS",
           "CHANGELOG_REWRITES", "CHANGELOG_REWRITE_BYTES", "STATE_WRITES", "STATE_WRITE_BYTES", "INPUT_PURGES",
           "INPUT_DELETED_UNREAD", "SESSION_CACHE_LOOKUPS", "SESSION_CACHE_EVICTIONS", "SESSION_CACHE_BYTES",
           "SESSION_CACHE_SESSIONS")

disable_created_metrics()  # *_created series double the output and no dashboard uses them
REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter("learnstream_events_total",
                 "Input events by topic and outcome (applied, duplicate, rejected); an envelope counts its events",
                 ["topic", "outcome"], registry=REGISTRY)
MESSAGES = Counter("learnstream_messages_total",
                   "Input Kafka messages by topic and outcome (applied, duplicate, rejected, rerouted)",
                   ["topic", "outcome"], registry=REGISTRY)
# Labelled by the verb that ran the kernels (learn_feedback, record_loss, ...): one batch kernel call per
# verb, so the verb is the unit an operator can act on.
KERNEL_SECONDS = Histogram("learnstream_kernel_seconds", "Time applying a verb's numeric work, by kernel (verb)",
                           ["kernel"], registry=REGISTRY,
                           buckets=(1e-6, 5e-6, 2e-5, 1e-4, 5e-4, 2e-3, 1e-2, 5e-2, 0.25, 1.0))
BATCH_SECONDS = Histogram("learnstream_batch_seconds", "Time to apply one consumed batch (all sessions)",
                          registry=REGISTRY, buckets=(1e-4, 1e-3, 5e-3, 2e-2, 0.1, 0.5, 2.0))
ADAPTER_NORM = Gauge("learnstream_adapter_norm", "Last observed instant-adapter L2 norm (max 5)", registry=REGISTRY)
DOWNSTREAM = Counter("learnstream_downstream_events_total",
                     "Events produced downstream by kind (boundaries, consolidations, drift, ...)",
                     ["kind"], registry=REGISTRY)
HTTP_DENIED = Counter("learnstream_http_denied_total",
                      "HTTP requests refused for their credential: 401 (missing / invalid token) and 403 (peer credential not forwarding, session out of the token's scopes)",
                      ["status", "reason"], registry=REGISTRY)
DLQ = Counter("learnstream_dlq_total", "Events sent to the dead-letter topic, by reason code", ["reason"],
              registry=REGISTRY)
CONSUMER_LAG = Gauge("learnstream_consumer_lag", "Records behind the high watermark, by input topic",
                     ["topic"], registry=REGISTRY)
REROUTED = Counter("learnstream_rerouted_total",
                   "Events that arrived on a partition not owning their session_key, re-written to the owner",
                   ["topic"], registry=REGISTRY)
READY = Gauge("learnstream_ready", "1 once table recovery finished and the worker serves", registry=REGISTRY)
OFFSET_GAPS = Counter("learnstream_offset_gaps_total",
                      "Input records delivered after a skipped offset: reread (records were skipped, the "
                      "consumer sought back) or empty (a fetch confirmed no record there: markers, compaction)",
                      ["outcome"], registry=REGISTRY)
RESTORED_RECORDS = Counter("learnstream_restored_records_total",
                           "Changelog records applied by the bulk table restore (workers/stream/restore.py)",
                           registry=REGISTRY)
RESTORED_BYTES = Counter("learnstream_restored_bytes_total", "Changelog key and value bytes applied by the bulk restore",
                         registry=REGISTRY)
RESTORE_SECONDS = Counter("learnstream_restore_seconds_total", "Time spent in the bulk table restore",
                          registry=REGISTRY)
PROBED_RECORDS = Counter("learnstream_recovery_probed_records_total",
                         "Changelog records read at recovery to find a partition's last committed record "
                         "(transactions: a log ends with a marker)", registry=REGISTRY)
# Outbound calls to scoring endpoints (workers/scoring/prefetch.py), made off the event loop.
SCORING_CALLS = Counter("learnstream_scoring_calls_total",
                        "Calls to scoring endpoints by outcome (ok, failed, skipped: its endpoint failed twice "
                        "in the batch)", ["outcome"], registry=REGISTRY)
SCORING_CALL_SECONDS = Histogram("learnstream_scoring_call_seconds", "Duration of one call to a scoring endpoint",
                                 registry=REGISTRY, buckets=(0.01, 0.05, 0.2, 1.0, 5.0, 20.0, 120.0))
# The decoded-session cache (LEARNSTREAM_CACHE_BYTES, workers/state/sessions.py): misses with evictions
# mean the sessions in use do not fit it, and every miss reads and decodes a whole session.
SESSION_CACHE_LOOKUPS = Counter("learnstream_session_cache_lookups_total",
                                "Session states applied batches looked up, by result: hit (decoded and cached) or "
                                "miss (read from the table and decoded)", ["result"], registry=REGISTRY)
SESSION_CACHE_EVICTIONS = Counter("learnstream_session_cache_evictions_total",
                                  "Decoded sessions evicted to keep the cache within LEARNSTREAM_CACHE_BYTES",
                                  registry=REGISTRY)
SESSION_CACHE_BYTES = Gauge("learnstream_session_cache_bytes", "Bytes the decoded-session cache holds",
                            registry=REGISTRY)
SESSION_CACHE_SESSIONS = Gauge("learnstream_session_cache_sessions", "Sessions the decoded-session cache holds",
                               registry=REGISTRY)
# What the verbs wrote to the session tables: every key also goes to its table's changelog, so this is
# the changelog traffic the learning causes (issue 10: a write costs about what changed).
STATE_WRITES = Counter("learnstream_state_writes_total",
                       "Keys written (or deleted) in the session tables by applied batches, each also a changelog record",
                       registry=REGISTRY)
STATE_WRITE_BYTES = Counter("learnstream_state_write_bytes_total",
                            "Key and value bytes written to the session tables by applied batches (and to their changelogs)",
                            registry=REGISTRY)
# Worker-side compaction of transactional changelogs (workers/kafka/changelog_rewrite.py)
CHANGELOG_REWRITES = Counter("learnstream_changelog_rewrites_total",
                             "Changelog partitions rewritten from local state and cut (DeleteRecords) by the worker",
                             registry=REGISTRY)
CHANGELOG_REWRITE_BYTES = Counter("learnstream_changelog_rewrite_bytes_total",
                                  "Key and value bytes re-produced by changelog rewrites", registry=REGISTRY)
# The embedded broker's input, deleted once applied (workers/kafka/input_purge.py), and input the
# broker's retention deleted before this worker read it: lost events (an alert, never expected)
INPUT_PURGES = Counter("learnstream_input_purges_total",
                       "Input partitions cut (DeleteRecords) below offsets this worker applied and committed",
                       ["topic"], registry=REGISTRY)
INPUT_DELETED_UNREAD = Counter("learnstream_input_deleted_unread_total",
                               "Input offsets the broker deleted (retention) before this worker consumed them",
                               ["topic"], registry=REGISTRY)
for _result in ("hit", "miss"):  # both series from the start: a rate of misses is never "no data"
    SESSION_CACHE_LOOKUPS.labels(_result)
