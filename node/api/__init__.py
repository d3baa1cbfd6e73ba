"""The node's HTTP API (see node.api.server for the routes, node.api.auth for signed result requests)."""

from node.api.auth import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    result_request_message,
    sign_result_request,
)
from node.api.server import MAX_OFFER_BYTES, NodeApi, OfferReply, create_app, job_dict, start_api

__all__ = ["MAX_OFFER_BYTES", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "AuthError", "NodeApi", "OfferReply",
           "create_app", "job_dict", "result_request_message", "sign_result_request", "start_api"]
