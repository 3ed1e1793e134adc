from budget_proxy.cli import main

main()
