"""Batches the gateway runs itself, for deployments without a batch API (vLLM and other
OpenAI-compatible servers): `params` (which deployments, their limits), `provider` (the
contract: submit, poll, cancel, results), `engine` (leases, one runner per deployment), `run`
(one run: lines, checkpoints, result files), `sender` (one line, retries), `limits`, `wire`
(request and result lines)."""
