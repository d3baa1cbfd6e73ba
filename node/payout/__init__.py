"""Automated payouts (`gpunode payout`, scripts/payout.py): one unattended pass, for cron or a systemd timer,
that finalizes the provider's due jobs, withdraws the credited earnings to the payout address and sweeps them
on to a cold address, keeping a gas reserve on the hot key.

The node's settler does the first two while the node runs; this pass exists for when it does not (the node
is stopped, or runs elsewhere) and for the sweep, which the node never does. It is safe to run every minute
and from two schedulers at once: a lock lets one run at a time, transactions still in flight stop a run, and
each step reads the chain right before it sends, so a rerun after a crash sends only what is still missing.

Modules: ``cli`` (arguments, exit codes), ``report`` (JSON lines), ``lock`` (one run at a time), ``keys``
(which key sends), ``scan`` (which jobs are due), ``run`` (the steps).
"""
