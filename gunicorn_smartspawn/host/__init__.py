"""Everything smartspawn changes in gunicorn, in one place (patches), and the gunicorn
releases it runs on (versions).
"""
