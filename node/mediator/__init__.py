"""Mediators: the M-of-N arbiter for disputes no contract can decide by itself (float work).

A mediator re-checks a disputed job's result off chain (``gpunode mediate check``) and signs an EIP-712
``Ruling(bytes32 jobId,bool providerWasRight)`` for the MediatorSet contract; anyone collects a threshold of
those signatures and sends ``MediatorSet.resolve`` (``gpunode mediate submit``). See docs/verification.md.
"""
