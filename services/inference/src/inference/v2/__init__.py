"""Open Inference Protocol v2 (KServe V2 / Triton / MLServer REST): routes, codecs, metadata."""
