"""tools/: offline work on job and result files, no engine: ``estimate`` (cost and time
bound), ``export`` (results to CSV / JSONL), ``ordering`` (external sort and merge-join for
``sort``), ``imagejobs`` (jobs from a folder of images), ``report`` (a job's run log drawn
as HTML, or its headline figures)."""
