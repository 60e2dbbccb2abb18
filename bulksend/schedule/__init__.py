"""When a campaign may send: ``[schedule]``'s start, daily windows and end
(:mod:`~bulksend.schedule.windows`)."""
