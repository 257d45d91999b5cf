"""Background processes: RQ workers and the rq-scheduler that feeds them."""
