"""The master's code: gunicorn's arbiter extended (arbiter), the table of its
children (fleet), the policies (refork, lifecycle) and what they decide (actions).
"""
