print("rexnode")
