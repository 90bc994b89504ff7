"""Object store adapters: memory (tests), local directory, S3 / Cloudflare R2."""
