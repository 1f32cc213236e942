"""The job types shipped with buildcat, written as a studio writes its own."""
