from notifyd.cli.commands import main

main()
