"""Layers: routers and their Routing record, expert banks, the MoE layer, Soft MoE, auxiliary losses, precision."""
