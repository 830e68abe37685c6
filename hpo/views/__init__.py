"""What a user sees: ``hpo status``, ``hpo report``, ``hpo dashboard``, ``hpo validate``'s data summary, the results tables every command prints, and progress bars.

Imports ``hpo.study``, ``objectives`` and ``storage``; never ``hpo.execution``: a view reads the stored study, it runs nothing.
"""
