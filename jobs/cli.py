import click
@click.group()
def main():
    """sdbatch"""
