"""Running trials: ``hpo run`` and ``hpo create``, the trial runner, the worker loop of one study, pool workers that serve every study, worker slots (one process per GPU), the teacher and its logit cache, and cost metrics kept in the study.

Imports ``hpo.study``, ``hpo.views`` (progress bars, results tables), ``objectives`` and ``storage``.
"""
