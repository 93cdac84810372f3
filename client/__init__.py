"""The command-line client (`smolvlm-client`): the job API from a terminal, over HTTP only.

It imports nothing of the server; it speaks the contract of docs/API.md like any frontend.
"""
