"""Processing chains: manifests (TOML) and the runner that streams frames through the stages."""
