from resistance.cli import main

main()
