"""Math on arrays: probe heads, metrics, bootstrap, reports. Imports neither embedkit nor stores."""
