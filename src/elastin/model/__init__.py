"""Typed, validated domain objects of Elastin and the spec-file parser.

This is the bottom layer: it imports nothing else of Elastin (a contract in pyproject.toml
keeps it so) and does no I/O beyond reading a spec file (``load_spec``). Everything above —
store, scheduler, mesh, client, server, agent, sdk, cli — speaks in these types.

Modules:
    units      parse and format cpu (cores / millicores) and byte sizes (Mi, Gi, ...)
    resources  ``Resources``: cpu, memory and disk, with arithmetic and fits checks
    workload   the desired state: ``Application``, ``Workload`` and their parts
    cluster    the actual state: ``Node``, ``Allocation``, ``Event``, ``Usage``; the
               allocation lifecycle and its table of legal transitions
    settled    ``settlement``: whether an application's change has settled or failed
    codec      JSON-ready dict <-> object conversion for everything above
    spec       YAML spec-file parsing with located, helpful errors
    errors     ``ModelError`` (the exception root of this package), ``UnitError``, ``SpecError``
"""
