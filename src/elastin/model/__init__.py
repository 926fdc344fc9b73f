"""Typed, validated domain objects of Elastin and the spec-file parser.

This is the bottom layer: it imports nothing else of Elastin and does no I/O beyond
reading the text it is handed. Everything above (store, scheduler, server, agent, sdk, cli)
speaks in these types.

Modules:
    units      parse and format cpu (cores / millicores) and byte sizes (Mi, Gi, ...)
    resources  ``Resources``: cpu, memory and disk, with arithmetic and fits checks
    workload   the desired state: ``Application``, ``Workload`` and their parts
    cluster    the actual state: ``Node``, ``Allocation``, ``Event``, ``Usage``
    codec      JSON-ready dict <-> object conversion for everything above
    spec       YAML spec-file parsing with located, helpful errors
    errors     ``ModelError`` and ``SpecError`` (the exception root of this package)
"""
