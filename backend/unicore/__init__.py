"""HPC systems reached through UNICORE's REST API: settings, job descriptions, client."""
