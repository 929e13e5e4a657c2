"""store/: the run's files, written and read by the same modules. ``records`` (the record
format, builders and fast reader side by side), ``writer`` (appending whole lines), ``ledger``
(which input line each answer was for), ``resume`` (what earlier runs wrote), ``edits`` (an
input edited between runs), ``inputfilter`` (which lines a rerun sends, and its tally),
``lock`` (one run per job), ``paths`` (paths that would destroy data), ``runlog`` (the run
log's events, both ways)."""
