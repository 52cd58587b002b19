"""The report page: an HTML view of a job's output folder."""
