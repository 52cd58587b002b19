"""sdbatch.jobs"""
