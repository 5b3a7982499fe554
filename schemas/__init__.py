"""passpost.schemas"""
