"""The ``hitl`` command and what ``make run`` needs: the process supervisor, readiness checks,
development defaults, the banner and the demo bot.

Nothing else imports this package: it sits above the domain (``hitl``), the store, the workflows,
the activities and the API, and starts them as processes.
"""
