"""Domain services: one module per domain, each implementing some RPCs of the contract.

``streamcli.server.service.add_service`` binds every RPC to the domain
method of the same name. Services depend on the backend seams only.
"""
