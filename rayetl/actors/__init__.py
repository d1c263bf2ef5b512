"""Everything that knows Ray: submission, the JobCoordinator actor, task execution, the janitor."""
