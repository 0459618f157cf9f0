"""`airlock up`: the three services (engine, worker, gateway) as child processes, supervised."""
