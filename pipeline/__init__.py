"""sdbatch.pipeline"""
