"""What each generated settings flag does, for fields whose settings class gives no description.

Why here: ``--help`` of ``serve`` and ``proxy`` is generated from the settings
classes, and the area settings (``RerankSettings``, ``CacheSettings``,
``ConnectionSettings``) document their fields in the class docstring, not per
field, so a generated flag used to say only its own name ("rerank.token
budget"). A field's own ``Field(description=...)`` always wins over the text
here; ``tests/unit/test_cli_habits.py`` fails when a field has neither, so a new
setting cannot ship with a nameless flag.
"""

from __future__ import annotations

# Keyed by the flag's dest: "<area>.<field>" for nested areas, "<field>" at the top.
FIELD_HELP: dict[str, str] = {
    # -- rerank (RerankSettings, SECONDPASS_RERANK_*) ----------------------------
    "rerank.model": "cross-encoder to load: a Hugging Face model id or a local directory",
    "rerank.revision": (
        "model revision (branch, tag or commit) to load; needed with --rerank-trust-remote-code"
    ),
    "rerank.device": "torch device for the model: auto picks CUDA, then MPS, then CPU",
    "rerank.dtype": (
        "weight precision: auto is bf16 on CUDA (fp16 where bf16 is unsupported) and fp32 elsewhere"
    ),
    "rerank.max_length": "most tokens per (query, passage) pair; can only lower the model's own window",
    "rerank.token_budget": (
        "most padded tokens in one forward pass (longest input x inputs); "
        "shrinks by itself after a CUDA out-of-memory error"
    ),
    "rerank.max_batch_size": "most pairs in one forward pass, whatever the token budget allows",
    "rerank.long_document": (
        "what happens to a passage longer than the window: truncate cuts the tail, "
        "chunk scores overlapping windows and keeps the best"
    ),
    "rerank.max_chunks": "with --rerank-long-document chunk: most windows scored per passage",
    "rerank.chunk_overlap": "with --rerank-long-document chunk: tokens that consecutive windows share",
    "rerank.overlap_collate": "tokenize the next batch while the model runs the current one",
    "rerank.cache_folder": (
        "directory for downloaded models and ONNX/OpenVINO exports (unset: the Hugging Face home)"
    ),
    "rerank.trust_remote_code": (
        "run Python code shipped in the model repository (needs a pinned --rerank-revision)"
    ),
    "rerank.allow_pickle": "accept .bin (pickle) weights, which can run code when they are loaded",
    "rerank.backend": (
        "runtime of the forward pass: auto picks the fastest exact one installed "
        "(OpenVINO, then ONNX Runtime on a CPU; torch on a GPU)"
    ),
    "rerank.quantize": "int8: quantize the ONNX export dynamically (faster, approximate scores)",
    "rerank.rank_by": "which score orders the hits: normalized (0 to 1) or raw (the model's logit)",
    "rerank.min_score": (
        "least score a hit needs to be kept, on the --rerank-rank-by scale; unset keeps every hit"
    ),
    # -- cache (CacheSettings, SECONDPASS_CACHE_*) -------------------------------
    "cache.backend": (
        "where scores are cached: memory (per-process LRU), redis (shared by replicas) or none"
    ),
    "cache.max_entries": "most scores the in-memory LRU keeps before evicting the oldest",
    "cache.redis_url": (
        "Redis URL for --cache-backend redis, e.g. redis://127.0.0.1:6379/0 "
        "(put the password in SECONDPASS_CACHE_REDIS_PASSWORD)"
    ),
    "cache.redis_timeout_s": "seconds a Redis read or write may take before it counts as a miss",
    "cache.ttl_s": "seconds a score stays in Redis before it expires",
    "cache.redis_connect_timeout_s": "seconds to open a Redis connection before it counts as a miss",
    "cache.redis_max_connections": "size of the Redis connection pool",
    "cache.key_prefix": "prefix of every Redis key, so the cache can share a Redis with other data",
    "cache.cooldown_s": "seconds to skip Redis after it failed, so a dead cache costs nothing per request",
    "cache.warn_interval_s": "least seconds between two warnings about a failing Redis",
    # -- engine (ConnectionSettings, SECONDPASS_ENGINE_*) ------------------------
    "engine.engine": "kind of cluster behind --engine-hosts: elasticsearch or opensearch",
    "engine.hosts": "URL of each node of the cluster to search",
    "engine.username": (
        "user for HTTP basic auth to the cluster (password in SECONDPASS_ENGINE_PASSWORD)"
    ),
    "engine.verify_certs": "verify the cluster's TLS certificate",
    "engine.ca_certs": "CA bundle (PEM file) to verify the cluster's certificate with",
    "engine.request_timeout_s": "seconds one HTTP attempt to the cluster may take",
    "engine.deadline_s": "seconds a whole engine call may take, retries included",
    "engine.max_attempts": (
        "most attempts per engine call (connection errors, timeouts and 429/502/503/504 are retried)"
    ),
    "engine.server_timeout_s": (
        "search timeout sent to the engine so it stops early (unset: the request timeout)"
    ),
    "engine.initial_backoff_s": "seconds of jittered wait before the first retry; doubles each retry",
    "engine.max_backoff_s": "longest wait between two retries, in seconds",
    "engine.compatible_with": (
        "Elasticsearch only: major version to pin in the REST compatibility headers"
    ),
    "engine.max_connections": "HTTP connections kept open to each node",
}
