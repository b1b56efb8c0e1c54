"""Methods: only what a paper adds that is not a generic part (data, model, objective, protocol).

A method module may import ``core``, ``data``, ``models``, ``embedders`` and ``eval``; never ``engine`` or
``cli`` (the engine runs methods, the command line calls them).
"""
