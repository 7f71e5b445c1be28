"""Client core: connections to a streamcli server and typed calls over them.

Client code never prints; it returns or yields typed results and raises
``streamcli.errors.StreamcliError`` subclasses for expected failures.
"""
