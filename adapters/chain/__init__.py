"""Chain adapters: the Bittensor SDK, and fake chains for tests and the localnet."""
