"""The command-line client (`smolvlm-client`): the job API from a terminal, over HTTP only.

It imports nothing of the server or the worker, only `protocol` (to check analysis
parameters before uploading); it speaks the contract of docs/API.md like any frontend.
Nothing imports it.
"""
