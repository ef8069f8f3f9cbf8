-- First boot only (docker-entrypoint-initdb.d): the paving database comes from POSTGRES_DB.
SELECT 'CREATE DATABASE bowmark_reports_concrete OWNER ' || quote_ident(current_user)
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'bowmark_reports_concrete')\gexec
