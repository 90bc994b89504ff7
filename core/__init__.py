"""The domain: pure services over the ports. No vendor SDKs, environment or filesystem here."""
