"""The verb surface ``{verb, body} -> {ok, verb, data|error}``.

- ``registry``: ``@verb`` / ``@coalesced`` and the registry every verb module declares itself in;
- ``fields``, ``codec``: reading a verb body's fields and embeddings (one error wording);
- ``surface``: what callers use: every verb registered, request parsing, session keys, ``run_verb``,
  envelopes, the built-in verbs;
- ``session``: ``LearnSession``, every verb in process.

Nothing is imported here, so a verb module can import ``workers.verbs.registry`` while
``workers.verbs.surface`` imports every verb module.
"""
