"""Live control of a running campaign: commands (:mod:`~bulksend.control.commands`), the
run's endpoint (:mod:`~bulksend.control.server`) and the client ``bulksend ctl`` uses
(:mod:`~bulksend.control.client`)."""
