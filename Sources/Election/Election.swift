// Election module
