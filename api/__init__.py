"""The HTTP front end: validates input, enqueues predict tasks, answers or lets clients poll."""
