"""Pictures and pages of a run's history: ``plot`` (matplotlib, optional) and ``report`` (a
static HTML page). The numbers come from ``corafs.core.evolution``; nothing here reads the
store directly."""
