"""passpost.ingest"""
