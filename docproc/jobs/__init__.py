"""One job from request to end: what a request may ask (``requests``), the checks on its
document (``inputs``), the job store and its page state in Redis (``store``, ``leases``), page
results (``results``, ``clean_text``), the extraction schemas, and what follows a job's end
(``lifecycle``)."""
