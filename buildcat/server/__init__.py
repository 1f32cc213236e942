"""The farm server: the queue (scheduler), its HTTP face (app) and the journal."""
