"""The requester's side of the market: sign offers, pay for them, follow the jobs, download and verify the
results, then accept or dispute.

A provider node is only half of a market; this package is the other half, as a library (``Requester``,
``verify_matmul``/``verify_torch_export``, ``InputServer``) with a thin command over it
(``gpunode request``, ``scripts/requester.py``). It reuses the node's own pieces (offer signing, the operator
transaction sender, the result commitment, the workloads) so both sides agree on every byte by construction.

Importing this package stays cheap: torch is imported only by verification, when it runs.
"""
