"""What the runs say: the ledger, the metrics' roles, the statistics, the experiments as tables, the report and
its figures. Pandas; no torch."""
