"""When runs start: cron maths (:mod:`.cron`), the triggers a job has (:mod:`.triggers`) and the scheduler loop."""
